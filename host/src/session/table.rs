//! The session table: which session a device's HELLO binds its connection to, which
//! session makes room at the limit, and which connection of a session is the current one.
//! No sockets and no clock in here: time is passed in, so every decision is a unit test.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use tokio::sync::Notify;

/// One device's session, kept across its connections: the server's state of it (`S`: its
/// links, queues, written position) under a lock, and a wake-up for the task serving its
/// current connection.
pub struct Session<S> {
    device: u32,
    entry: Mutex<Entry<S>>,
    wake: Notify,
}

impl<S> std::fmt::Debug for Session<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Session({:08x})", self.device)
    }
}

impl<S> Session<S> {
    fn new(device: u32, state: S, now: Instant) -> Self {
        Session {
            device,
            entry: Mutex::new(Entry {
                state,
                generation: 0,
                connected: false,
                idle_since: now,
                peer: None,
                heard: None,
                sampler: super::tap::Sampler::new(),
            }),
            wake: Notify::new(),
        }
    }

    /// The device's identity: the session its HELLOs announce.
    pub fn device(&self) -> u32 {
        self.device
    }

    /// The session's state, locked. A panicking task does not take every other device down
    /// with it: a poisoned lock is taken over as it is.
    pub fn lock(&self) -> MutexGuard<'_, Entry<S>> {
        super::lock(&self.entry)
    }

    /// Wakes the task serving the current connection (something for the device arrived).
    pub fn wake(&self) {
        self.wake.notify_one();
    }

    /// Completes when [`Session::wake`] was called (a wake-up while nobody waits is kept).
    pub async fn woken(&self) {
        self.wake.notified().await
    }
}

/// A session's state with the table's bookkeeping: which connection serves it, and since
/// when it has none. Dereferences to the server's state.
#[derive(Debug)]
pub struct Entry<S> {
    state: S,
    /// Bumped by each connection that takes the session over; an older connection seeing a
    /// newer generation leaves the session alone.
    generation: u64,
    connected: bool,
    idle_since: Instant,
    /// The peer of the latest connection, for onlookers (`session::tap`).
    peer: Option<Arc<str>>,
    /// When bytes last came from the device (the link's clock).
    heard: Option<tether_core::link::Instant>,
    /// Onlookers' samples of the session's records, and the kinds it declared (kept with
    /// the session: a declaration comes once a session, whatever its connections).
    sampler: super::tap::Sampler,
}

impl<S> Entry<S> {
    /// A new connection takes the session over: the connection before it, if any, is
    /// superseded. Returns the new connection's generation.
    pub fn attach(&mut self) -> u64 {
        self.generation += 1;
        self.connected = true;
        self.generation
    }

    /// Whether the connection of `generation` is still the session's current one.
    pub fn is_current(&self, generation: u64) -> bool {
        self.generation == generation
    }

    /// The connection of `generation` ended at `now`; if it was the current one, the
    /// session is without a connection from then on.
    pub fn detach(&mut self, generation: u64, now: Instant) {
        if self.is_current(generation) {
            self.connected = false;
            self.idle_since = now;
        }
    }

    /// Whether a connection serves the session now.
    pub fn connected(&self) -> bool {
        self.connected
    }

    /// Connections that took the session over so far (its current generation).
    pub fn connections(&self) -> u64 {
        self.generation
    }

    /// Notes the peer of the connection taking the session over.
    pub fn set_peer(&mut self, peer: &str) {
        if self.peer.as_deref() != Some(peer) {
            self.peer = Some(peer.into());
        }
    }

    /// The peer of the latest connection.
    pub fn peer(&self) -> Option<&Arc<str>> {
        self.peer.as_ref()
    }

    /// Notes that bytes came from the device at `now` (the link's clock).
    pub fn heard(&mut self, now: tether_core::link::Instant) {
        self.heard = Some(now);
    }

    /// Samples for onlookers what the link (`link` of the state) received since the last
    /// turn: before the server takes the records.
    pub fn sample(
        &mut self,
        tap: &super::tap::Tap,
        device: u32,
        clock: &crate::clock::Clock,
        link: impl FnOnce(&mut S) -> &mut tether_core::link::Link<crate::storage::HeapStorage>,
    ) {
        self.sampler.take(tap, device, link(&mut self.state), clock);
    }

    /// When bytes last came from the device (the link's clock), if ever.
    pub fn last_heard(&self) -> Option<tether_core::link::Instant> {
        self.heard
    }
}

impl<S> std::ops::Deref for Entry<S> {
    type Target = S;
    fn deref(&self) -> &S {
        &self.state
    }
}

impl<S> std::ops::DerefMut for Entry<S> {
    fn deref_mut(&mut self) -> &mut S {
        &mut self.state
    }
}

/// What [`Table::admit`] decided for a HELLO.
#[derive(Debug)]
pub struct Admitted<S> {
    /// The session the connection belongs to.
    pub session: Arc<Session<S>>,
    /// Whether it was made for this HELLO (the device is new, or was forgotten).
    pub new: bool,
    /// The session forgotten to make room for it, if the table was full.
    pub forgotten: Option<Arc<Session<S>>>,
}

/// Why [`Table::admit`] refused a HELLO.
#[derive(Debug, PartialEq, Eq)]
pub enum Refused<E> {
    /// The table is full and no session is idle with nothing pending.
    Busy,
    /// The new session's state could not be made.
    Open(E),
}

/// The sessions a server keeps, by device identity, at most `limit` of them.
pub struct Table<S> {
    sessions: HashMap<u32, Arc<Session<S>>>,
    limit: usize,
    /// Every identity that had a session, forgotten ones too (for summaries).
    seen: HashSet<u32>,
}

impl<S> std::fmt::Debug for Table<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Table({} of {})", self.sessions.len(), self.limit)
    }
}

impl<S> Table<S> {
    /// An empty table keeping at most `limit` sessions (at least one).
    pub fn new(limit: usize) -> Self {
        Table {
            sessions: HashMap::new(),
            limit: limit.max(1),
            seen: HashSet::new(),
        }
    }

    /// Sessions kept now.
    pub fn len(&self) -> usize {
        self.sessions.len()
    }

    /// Whether no session is kept.
    pub fn is_empty(&self) -> bool {
        self.sessions.is_empty()
    }

    /// The most sessions kept.
    pub fn limit(&self) -> usize {
        self.limit
    }

    /// Device identities that had a session, forgotten ones included.
    pub fn seen(&self) -> usize {
        self.seen.len()
    }

    /// The session of `device`, if kept.
    pub fn get(&self, device: u32) -> Option<&Arc<Session<S>>> {
        self.sessions.get(&device)
    }

    /// Every session kept.
    pub fn sessions(&self) -> impl Iterator<Item = &Arc<Session<S>>> {
        self.sessions.values()
    }

    /// Binds a HELLO of `device` at `now` to a session: its own if kept; else a new one
    /// made by `open`. At the limit, the session idle longest (no connection since the
    /// earliest time) among those `idle` says have nothing pending is forgotten to make
    /// room, and returned so that the caller can keep what it must of it; none idle: the
    /// HELLO is refused, and nothing is made. Nothing is forgotten if `open` fails.
    pub fn admit<E>(
        &mut self,
        device: u32,
        now: Instant,
        idle: impl Fn(&mut S) -> bool,
        open: impl FnOnce() -> Result<S, E>,
    ) -> Result<Admitted<S>, Refused<E>> {
        if let Some(session) = self.sessions.get(&device) {
            return Ok(Admitted {
                session: session.clone(),
                new: false,
                forgotten: None,
            });
        }
        let victim = if self.sessions.len() >= self.limit {
            let victim = self
                .sessions
                .iter()
                .filter_map(|(&d, s)| {
                    let mut e = s.lock();
                    (!e.connected && idle(&mut e.state)).then_some((e.idle_since, d))
                })
                .min()
                .ok_or(Refused::Busy)?;
            Some(victim.1)
        } else {
            None
        };
        let state = open().map_err(Refused::Open)?;
        let forgotten = victim.and_then(|v| self.sessions.remove(&v));
        let session = Arc::new(Session::new(device, state, now));
        self.sessions.insert(device, session.clone());
        self.seen.insert(device);
        Ok(Admitted {
            session,
            new: true,
            forgotten,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    /// A stand-in for a server's state: whether it holds anything.
    #[derive(Debug, Default)]
    struct Held(bool);

    fn idle(s: &mut Held) -> bool {
        !s.0
    }

    fn admit(t: &mut Table<Held>, device: u32, at: Instant) -> Result<Admitted<Held>, Refused<()>> {
        t.admit(device, at, idle, || Ok(Held::default()))
    }

    /// A device connects, serves, and is left without a connection at `at`.
    fn visit(t: &mut Table<Held>, device: u32, at: Instant) {
        let a = admit(t, device, at).unwrap();
        let mut e = a.session.lock();
        let g = e.attach();
        e.detach(g, at);
    }

    #[test]
    fn a_known_device_gets_its_own_session_back_even_at_the_limit() {
        let t0 = Instant::now();
        let mut t = Table::new(1);
        let first = admit(&mut t, 7, t0).unwrap();
        assert!(first.new && first.forgotten.is_none());
        first.session.lock().attach();
        let again = admit(&mut t, 7, t0).unwrap();
        assert!(!again.new && again.forgotten.is_none());
        assert!(Arc::ptr_eq(&first.session, &again.session));
        assert_eq!((t.len(), t.seen()), (1, 1));
    }

    #[test]
    fn at_the_limit_the_session_idle_longest_with_nothing_pending_makes_room() {
        let t0 = Instant::now();
        let at = |s| t0 + Duration::from_secs(s);
        let mut t = Table::new(3);
        visit(&mut t, 1, at(2));
        visit(&mut t, 2, at(1)); // idle longest, but holds a record
        visit(&mut t, 3, at(3));
        t.get(2).unwrap().lock().0 = true;
        let a = admit(&mut t, 4, at(4)).unwrap();
        assert_eq!(a.forgotten.map(|s| s.device()), Some(1));
        assert!(a.new && t.get(1).is_none() && t.get(4).is_some());
        assert_eq!((t.len(), t.seen()), (3, 4), "forgotten ones still counted");
        // Device 1 comes back: a new session, in the place of the next idle one (3; 4
        // has a connection of its own by now).
        a.session.lock().attach();
        let back = admit(&mut t, 1, at(5)).unwrap();
        assert!(back.new);
        assert_eq!(back.forgotten.map(|s| s.device()), Some(3));
        assert_eq!(t.seen(), 4);
    }

    #[test]
    fn a_full_table_of_busy_sessions_refuses_and_keeps_every_one() {
        let t0 = Instant::now();
        let mut t = Table::new(2);
        // One connected, one without a connection but holding something.
        admit(&mut t, 1, t0).unwrap().session.lock().attach();
        visit(&mut t, 2, t0);
        t.get(2).unwrap().lock().0 = true;
        assert_eq!(admit(&mut t, 3, t0).unwrap_err(), Refused::Busy);
        assert_eq!((t.len(), t.seen()), (2, 2));
        assert!(t.get(3).is_none());
    }

    #[test]
    fn a_session_that_cannot_be_made_forgets_nothing() {
        let t0 = Instant::now();
        let mut t = Table::new(1);
        visit(&mut t, 1, t0);
        let r = t.admit(2, t0, idle, || Err("no memory"));
        assert_eq!(r.unwrap_err(), Refused::Open("no memory"));
        assert!(t.get(1).is_some() && t.get(2).is_none());
        assert_eq!(t.seen(), 1);
    }

    #[test]
    fn a_newer_connection_supersedes_an_older_one() {
        let t0 = Instant::now();
        let mut t = Table::new(4);
        let s = admit(&mut t, 9, t0).unwrap().session;
        let old = s.lock().attach();
        let new = s.lock().attach();
        assert!(!s.lock().is_current(old) && s.lock().is_current(new));
        // The old connection ending leaves the session to the new one: still connected,
        // so never forgotten to make room.
        s.lock().detach(old, t0);
        assert!(s.lock().connected());
        let mut small = Table::new(1);
        let only = admit(&mut small, 9, t0).unwrap().session;
        let g1 = only.lock().attach();
        let _g2 = only.lock().attach();
        only.lock().detach(g1, t0);
        assert_eq!(admit(&mut small, 10, t0).unwrap_err(), Refused::Busy);
        s.lock().detach(new, t0);
        assert!(!s.lock().connected());
    }
}
