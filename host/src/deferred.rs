//! Sinks whose records become durable later than a call returns: a broker acknowledges
//! each PUBLISH on its own, and many are in flight at once (see [`crate::mqtt`]).
//!
//! A file or a database is durable at [`crate::sink::Sink::commit`], and the listener
//! releases a batch when the commit returns. A broker would make that one round trip a
//! batch, with the device waiting. Here instead the listener hands a device's records over
//! as they arrive ([`Deferred::submit`], which never waits), and releases them, in order,
//! as the sink reports them durable ([`Deferred::take_durable`], after it wakes the
//! device's task). "Acked means safe" is the same rule: a record is acknowledged to its
//! device only once the sink says it is durable.

use std::time::SystemTime;

use tether_core::link::Link;

use crate::recover::Resume;
use crate::sink::SinkError;
use crate::storage::HeapStorage;

/// A sink that acknowledges records after they were handed to it.
pub trait Deferred: Send + Sync + std::fmt::Debug {
    /// Hands record `seq` of `device` over; it is durable once [`Deferred::take_durable`]
    /// counts it. Never waits.
    fn submit(
        &self,
        time: SystemTime,
        device: u32,
        seq: u32,
        payload: &[u8],
    ) -> Result<(), SinkError>;

    /// How many more of `device`'s submitted records are durable since the last call, the
    /// oldest first.
    fn take_durable(&self, device: u32) -> usize;

    /// Calls `wake` whenever more of `device`'s records are durable.
    fn on_durable(&self, device: u32, wake: Box<dyn Fn() + Send + Sync>);

    /// The devices' link state, for the sink to publish (called every second).
    fn link_state(&self, devices: &[LinkState]);

    /// Stops: says so where the sink's readers see it, and lets go (bounded in time).
    fn close(&self);
}

/// One device's link, for [`Deferred::link_state`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LinkState {
    /// The device.
    pub device: u32,
    /// Whether a connection serves it now.
    pub online: bool,
    /// Retransmissions its link made (the listener's side).
    pub retransmissions: u64,
}

/// Where a device's received records stand with a [`Deferred`] sink: the oldest `handed`
/// were submitted (or skipped as already there), of which `skipped` flags which.
#[derive(Debug, Default)]
pub struct Handover {
    handed: std::collections::VecDeque<bool>,
    durable: usize,
}

/// Releases `device`'s records that `sink` made durable (and those skipped as already
/// there), then hands it those not handed yet. Returns the records released that were
/// submitted (not skipped).
pub fn pass(
    sink: &dyn Deferred,
    device: u32,
    link: &mut Link<HeapStorage>,
    resume: &mut Resume,
    h: &mut Handover,
) -> Result<u64, SinkError> {
    h.durable += sink.take_durable(device);
    let mut result = Ok(());
    {
        let skip = h.handed.len();
        for r in link.received().skip(skip) {
            if resume.already_written(r.seq) {
                h.handed.push_back(true);
            } else if let Err(e) = sink.submit(SystemTime::now(), device, r.seq, r.payload) {
                result = Err(e);
                break;
            } else {
                h.handed.push_back(false);
            }
        }
    }
    // The oldest handed records that are durable or skipped, in order.
    let (mut n, mut skipped) = (0, 0u64);
    while let Some(&was_skipped) = h.handed.get(n) {
        if was_skipped {
            skipped += 1;
        } else if h.durable > 0 {
            h.durable -= 1;
        } else {
            break;
        }
        n += 1;
    }
    if n > 0 {
        let last = link.received().nth(n - 1).map(|r| r.seq);
        if let Some(last) = last {
            resume.committed(last, skipped);
        }
        link.release(n);
        h.handed.drain(..n);
    }
    result.map(|()| n as u64 - skipped)
}
