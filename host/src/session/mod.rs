//! Serving device sessions: what `tether listen` and `tether bridge` share.
//!
//! A server (PROTOCOL.md 9.4.2) keeps one session per device, each with its own [`Link`],
//! across the device's connections, and binds each new connection to a session by the HELLO
//! it sends first. This module does that once, for any [`Server`]: the listener (records
//! written to the CSV, then released) and the bridge (records forwarded upstream, released
//! when the listener acknowledged them) are its two servers.
//!
//! ```text
//!  Acceptor (transport) ──► Engine::run: accept, --max-connections
//!                                │ one task a connection
//!                                ▼
//!  Engine::serve_connection ─ read_hello ──► Hello (decoded once)
//!        │                                     │ Server::check (keys)
//!        │                                     ▼
//!        │                       Table::admit (sans-IO): own session, or a new one;
//!        │                       at --max-devices the idle-longest one is forgotten
//!        │                                     │ Server::attach (resume, key bound)
//!        ▼                                     ▼
//!  pump: read ─► Link::handle_input      Session { generation: a newer connection
//!        timer ─► Link::handle_timeout             supersedes an older one }
//!        wake, stop                                │
//!        Server::step ── listener: write the batch, release; queue commands
//!                     └─ bridge: forward upstream, release what the listener acknowledged
//!        events, Link::poll_transmit ─► write_or_stall (a peer that never reads is dropped)
//! ```
//!
//! The table ([`table`]) decides without sockets or a clock (time is passed in), as
//! quinn-proto's `Endpoint` does, so its decisions are unit tests; [`Engine`] is the one
//! async driver of it. What onlookers (the dashboard) see of the sessions goes through the
//! engine's [`tap::Tap`], which no link ever waits on.

mod engine;
pub mod hello;
pub mod table;
pub mod tap;

pub use engine::{Engine, Limits};
pub use hello::Hello;
pub use table::{Entry, Session, Table};

use std::sync::{Arc, Mutex, MutexGuard};

use tether_core::link::{ConfigError, Link};

use crate::keys::Refusal;
use crate::storage::HeapStorage;

/// What a command that serves devices does with their sessions; [`Engine`] does the rest.
/// Its methods are called in this order for a connection: [`Server::check`], then (for a
/// device without a session) [`Server::open`] and [`Server::opened`], [`Server::attach`],
/// and [`Server::step`] at every turn of the connection's loop.
pub trait Server: Send + Sync + Sized + 'static {
    /// A session's state, kept across connections (its links, queues, written position).
    type State: Send + 'static;
    /// What [`Server::check`] learnt, for [`Server::attach`] (the listener: the device's key).
    type Ticket: Send;

    /// What the server is called in the log.
    const NAME: &'static str;
    /// Bytes read from a device's connection at a time.
    const READ_BUFFER: usize;
    /// Whether a peer dropped for sending text and no frame is told of `tether listen --raw`.
    const RAW_HINT: bool;
    /// Logged when the server stops accepting.
    const STOPPING: &'static str;
    /// Logged when connections did not finish within 5 s of the stop.
    const UNFINISHED: &'static str;

    /// The link that talks to the device.
    fn link(state: &mut Self::State) -> &mut Link<HeapStorage>;

    /// Whether the session has nothing pending (no record held, no command unacknowledged),
    /// so that it may be forgotten to make room when it has no connection.
    fn idle(state: &mut Self::State) -> bool;

    /// A link only to answer a HELLO that is not acceptable with its REJECT.
    fn refusal_link(&self) -> Result<Link<HeapStorage>, ConfigError>;

    /// Whether a connection with this HELLO may go on, decided before any state is kept
    /// (authentication).
    fn check(&self, hello: &Hello) -> Result<Self::Ticket, Refusal>;

    /// The state of a new session for this HELLO.
    fn open(&self, hello: &Hello) -> Result<Self::State, ConfigError>;

    /// A new session was made (the bridge starts its upstream task here).
    fn opened(&self, engine: &Arc<Engine<Self>>, session: &Arc<Session<Self::State>>);

    /// The session was forgotten to make room for another: keep what must outlive it.
    /// Called under the table's lock, so a device coming back finds it kept.
    fn forgotten(&self, session: &Session<Self::State>);

    /// A connection takes its session over, under the session's lock, before the link
    /// reads the HELLO: bind the ticket, note the HELLO. A refusal drops the connection.
    fn attach(
        &self,
        device: u32,
        state: &mut Self::State,
        ticket: Self::Ticket,
        hello: &Hello,
    ) -> Result<(), Refusal>;

    /// One turn of work under the session's lock, before the link's events and frames are
    /// taken: pass on what the link received, release what may be released. Returns
    /// whether, `stopping`, the connection has nothing left to finish.
    fn step(&self, device: u32, state: &mut Self::State, stopping: bool) -> bool;

    /// The link reported that the device restarted (`Event::PeerRestarted`).
    fn restarted(&self, device: u32, state: &mut Self::State, in_doubt: u32);

    /// The server stops: no more connections are accepted (the bridge withholds credit
    /// here).
    fn stopping(&self, engine: &Engine<Self>);

    /// What onlookers see of a session beside its link's counters (taken under its lock).
    fn observe(_state: &mut Self::State) -> Observed {
        Observed::default()
    }

    /// Queues `command` for the session's device, from the dashboard; `Err` says why not
    /// (the bridge's commands come from its listener).
    fn command(&self, _session: &Session<Self::State>, _command: &[u8]) -> Result<(), String> {
        Err(format!(
            "a {} does not send commands of its own",
            Self::NAME
        ))
    }

    /// Records the server is done with, and what that means (the listener: written and
    /// acknowledged; the bridge: acknowledged by the listener).
    fn finished(&self) -> (u64, &'static str) {
        (0, "finished")
    }

    /// How long the sink took to make each batch durable, if the server has a sink.
    fn commit_latency(&self) -> Option<&tap::Histogram> {
        None
    }
}

/// What a [`Server`] shows of one session beside its link's counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Observed {
    /// Commands for the device not yet acknowledged by it (queued ones included).
    pub commands_pending: u32,
    /// The bridge: whether the device's upstream session is established.
    pub upstream: Option<bool>,
}

/// Locks, recovering the data of a poisoned mutex (a panicking task must not take every
/// other device down with it).
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Why a link's handshake was refused, for people.
pub(crate) fn reject_text(link: &Link<HeapStorage>) -> String {
    link.reject()
        .map_or_else(|| "no reason given".to_owned(), |r| r.to_string())
}
