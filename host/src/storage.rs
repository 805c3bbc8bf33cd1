//! Link storage on the heap, sized at run time: a host keeps one link per device.

use std::sync::atomic::{AtomicUsize, Ordering};

use tether_core::link::{Parts, Storage};

/// Buffers given back by [`HeapStorage::park`] since [`trim`] last ran.
static PARKED: AtomicUsize = AtomicUsize::new(0);

/// Boxed slots for a [`tether_core::link::Link`]: `tx_slots` and `rx_slots` records of up
/// to `frame_len - 18` bytes.
///
/// Its buffers are taken when the link first needs them and can be given back with
/// [`HeapStorage::park`] once [`tether_core::link::Link::storage_idle`] says they hold
/// nothing: a listener serving thousands of mostly idle devices then keeps buffers only for
/// those with records in flight (the memory `tether-bench` measures per idle device).
#[derive(Debug)]
pub struct HeapStorage {
    shape: Shape,
    buffers: Option<Box<Buffers>>,
}

#[derive(Debug, Clone, Copy)]
struct Shape {
    tx_slots: usize,
    rx_slots: usize,
    frame_len: usize,
}

#[derive(Debug)]
struct Buffers {
    tx: Box<[u8]>,
    tx_len: Box<[u16]>,
    rx: Box<[u8]>,
    rx_len: Box<[u16]>,
    frame: Box<[u8]>,
}

impl Buffers {
    fn new(s: Shape) -> Box<Self> {
        Box::new(Buffers {
            tx: vec![0; s.tx_slots * s.frame_len].into_boxed_slice(),
            tx_len: vec![0; s.tx_slots].into_boxed_slice(),
            rx: vec![0; s.rx_slots * s.frame_len].into_boxed_slice(),
            rx_len: vec![0; s.rx_slots].into_boxed_slice(),
            frame: vec![0; s.frame_len].into_boxed_slice(),
        })
    }
}

impl HeapStorage {
    /// Storage for `tx_slots` + `rx_slots` records in frames of `frame_len` bytes; nothing
    /// is allocated until it is first used (`Link::new` uses it, to check its shape).
    pub fn new(tx_slots: usize, rx_slots: usize, frame_len: usize) -> Self {
        HeapStorage {
            shape: Shape {
                tx_slots,
                rx_slots,
                frame_len,
            },
            buffers: None,
        }
    }

    /// Bytes the buffers take when in use.
    pub fn bytes(&self) -> usize {
        let s = self.shape;
        (s.tx_slots + s.rx_slots + 1) * s.frame_len + 2 * (s.tx_slots + s.rx_slots)
    }

    /// Bytes held now: [`HeapStorage::bytes`], or 0 while parked.
    pub fn held(&self) -> usize {
        if self.buffers.is_some() {
            self.bytes()
        } else {
            0
        }
    }

    /// Gives the buffers back. Only when the link's
    /// [`storage_idle`](tether_core::link::Link::storage_idle) is true: the next use lends
    /// zeroed buffers of the same shape, so anything still in them would be lost.
    pub fn park(&mut self) {
        if self.buffers.take().is_some() {
            PARKED.fetch_add(1, Ordering::Relaxed);
        }
    }
}

impl Storage for HeapStorage {
    fn parts(&mut self) -> Parts<'_> {
        let shape = self.shape;
        let b = self.buffers.get_or_insert_with(|| Buffers::new(shape));
        Parts {
            tx: &mut b.tx,
            tx_len: &mut b.tx_len,
            rx: &mut b.rx,
            rx_len: &mut b.rx_len,
            frame: &mut b.frame,
        }
    }
}

/// Returns to the system the memory that parked buffers left free inside the allocator, if
/// any were parked since the last call; how many were. Without it the C library keeps the
/// freed pages of thousands of parked storages resident (measured: 6.1 KiB of listener RSS
/// per idle device at 10,000 devices; see `tether-bench`'s memory figure). The engine calls
/// it every few seconds; it costs one pass over the allocator's free lists.
pub fn trim() -> usize {
    let parked = PARKED.swap(0, Ordering::Relaxed);
    if parked > 0 {
        release_free_memory();
    }
    parked
}

#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn release_free_memory() {
    extern "C" {
        /// glibc's `malloc_trim(3)`: gives free memory at the top of the heap and whole
        /// free pages inside every arena back to the kernel (`madvise(MADV_DONTNEED)`).
        fn malloc_trim(pad: usize) -> i32;
    }
    // SAFETY: malloc_trim takes a plain integer, touches only the allocator's own state
    // under its locks, and is safe to call from any thread at any time.
    unsafe {
        malloc_trim(0);
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn release_free_memory() {}

#[cfg(test)]
mod tests {
    use super::*;
    use tether_core::link::{Config, Link, Role};

    fn pair() -> (Link<HeapStorage>, Link<HeapStorage>) {
        let c = Link::new(Config::new(Role::Client, 1), HeapStorage::new(8, 8, 128)).unwrap();
        let s = Link::new(Config::new(Role::Server, 2), HeapStorage::new(8, 8, 128)).unwrap();
        (c, s)
    }

    /// Moves bytes both ways until quiet; the server releases what it received.
    fn shuttle(c: &mut Link<HeapStorage>, s: &mut Link<HeapStorage>, got: &mut Vec<Vec<u8>>) {
        let now = tether_core::link::Instant::from_millis(0);
        let mut buf = vec![0u8; c.transmit_len().max(s.transmit_len())];
        for _ in 0..20 {
            while let Some(n) = c.poll_transmit(now, &mut buf) {
                s.handle_input(now, &buf[..n]);
            }
            let records: Vec<Vec<u8>> = s.received().map(|r| r.payload.to_vec()).collect();
            s.release(records.len());
            got.extend(records);
            while let Some(n) = s.poll_transmit(now, &mut buf) {
                c.handle_input(now, &buf[..n]);
            }
        }
    }

    #[test]
    fn parked_storage_is_given_back_and_taken_again_without_losing_a_record() {
        let (mut c, mut s) = pair();
        // Link::new looks at the shape (and so takes the buffers); parked, none is held.
        s.storage_mut().park();
        assert_eq!(s.storage_mut().held(), 0);
        let now = tether_core::link::Instant::from_millis(0);
        c.connect(now);
        s.connect(now);
        let mut got = Vec::new();
        for round in 0..3u8 {
            for i in 0..5u8 {
                c.send(&[round, i]).unwrap();
            }
            shuttle(&mut c, &mut s, &mut got);
            assert!(
                s.storage_idle() && c.storage_idle(),
                "all released and acknowledged"
            );
            assert!(s.storage_mut().held() > 0);
            s.storage_mut().park();
            c.storage_mut().park();
            assert_eq!(s.storage_mut().held(), 0);
        }
        let want: Vec<Vec<u8>> = (0..3u8)
            .flat_map(|r| (0..5u8).map(move |i| vec![r, i]))
            .collect();
        assert_eq!(got, want);
    }

    #[test]
    fn storage_is_not_idle_while_a_record_waits() {
        let (mut c, mut s) = pair();
        let now = tether_core::link::Instant::from_millis(0);
        c.connect(now);
        s.connect(now);
        let mut got = Vec::new();
        shuttle(&mut c, &mut s, &mut got);
        c.send(b"held").unwrap();
        assert!(
            !c.storage_idle(),
            "a record unacknowledged is in the storage"
        );
        let mut buf = vec![0u8; c.transmit_len()];
        while let Some(n) = c.poll_transmit(now, &mut buf) {
            s.handle_input(now, &buf[..n]);
        }
        assert!(
            !s.storage_idle(),
            "a record received and not released is in the storage"
        );
        // Half a frame read: the decoder's buffer holds it.
        let (mut c2, mut s2) = pair();
        c2.connect(now);
        s2.connect(now);
        let n = c2.poll_transmit(now, &mut buf).unwrap();
        s2.handle_input(now, &buf[..n / 2]);
        assert!(
            !s2.storage_idle(),
            "half a HELLO is in the decoder's buffer"
        );
    }
}
