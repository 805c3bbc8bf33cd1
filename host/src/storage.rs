//! Link storage on the heap, sized at run time: a host keeps one link per device.

use tether_core::link::{Parts, Storage};

/// Boxed slots for a [`tether_core::link::Link`]: `tx_slots` and `rx_slots` records of up
/// to `frame_len - 18` bytes. Allocated once; never grows.
#[derive(Debug)]
pub struct HeapStorage {
    tx: Box<[u8]>,
    tx_len: Box<[u16]>,
    rx: Box<[u8]>,
    rx_len: Box<[u16]>,
    frame: Box<[u8]>,
}

impl HeapStorage {
    /// Storage for `tx_slots` + `rx_slots` records in frames of `frame_len` bytes.
    pub fn new(tx_slots: usize, rx_slots: usize, frame_len: usize) -> Self {
        HeapStorage {
            tx: vec![0; tx_slots * frame_len].into_boxed_slice(),
            tx_len: vec![0; tx_slots].into_boxed_slice(),
            rx: vec![0; rx_slots * frame_len].into_boxed_slice(),
            rx_len: vec![0; rx_slots].into_boxed_slice(),
            frame: vec![0; frame_len].into_boxed_slice(),
        }
    }

    /// Bytes held.
    pub fn bytes(&self) -> usize {
        self.tx.len()
            + self.rx.len()
            + self.frame.len()
            + 2 * (self.tx_len.len() + self.rx_len.len())
    }
}

impl Storage for HeapStorage {
    fn parts(&mut self) -> Parts<'_> {
        Parts {
            tx: &mut self.tx,
            tx_len: &mut self.tx_len,
            rx: &mut self.rx,
            rx_len: &mut self.rx_len,
            frame: &mut self.frame,
        }
    }
}
