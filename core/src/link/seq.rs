//! Sequence-number arithmetic modulo 2^32 (serial number arithmetic, RFC 1982).
//!
//! Sequence numbers wrap; two of them compare correctly as long as they are less than 2^31
//! apart, which the link guarantees by keeping windows and slot counts at most 32,768.

/// `a - b` as a signed distance: positive when `a` is after `b`.
#[inline]
pub const fn seq_diff(a: u32, b: u32) -> i32 {
    a.wrapping_sub(b) as i32
}

/// Whether `a` comes before `b`.
#[inline]
pub const fn seq_lt(a: u32, b: u32) -> bool {
    seq_diff(a, b) < 0
}

/// Whether `a` comes before `b` or is `b`.
#[inline]
pub const fn seq_lte(a: u32, b: u32) -> bool {
    seq_diff(a, b) <= 0
}

/// Whether `a` comes at or before `b` counted from `base`: their distances from `base`
/// compared as unsigned numbers. A chain `base <= x <= y <= top` checked with this is sound
/// for any values; checked pairwise with [`seq_lte`] it is not, since three steps of less
/// than 2^31 each can go round the whole space (a peer's acknowledgement of 2^31 records
/// beyond what was sent passed so, and freed that many slots).
#[inline]
pub const fn seq_lte_from(base: u32, a: u32, b: u32) -> bool {
    a.wrapping_sub(base) <= b.wrapping_sub(base)
}

/// Slot `k` after `head` in a ring of `n` slots: `(head + k) % n` for `head < n` and `k <= n`,
/// which is what the link's rings ever ask, without a division (a Cortex-M0 has no divide
/// instruction, and the software one costs about 450 bytes of flash).
#[inline]
pub(crate) fn ring_add(head: usize, k: usize, n: usize) -> usize {
    debug_assert!(head < n && k <= n, "ring index {head} + {k} of {n}");
    let i = head + k;
    if i >= n {
        i - n
    } else {
        i
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn order_survives_the_wrap() {
        assert!(seq_lt(u32::MAX, 0));
        assert!(seq_lt(u32::MAX - 5, 3));
        assert!(!seq_lt(3, u32::MAX - 5));
        assert!(seq_lte(7, 7) && !seq_lt(7, 7));
        assert_eq!(seq_diff(2, u32::MAX), 3);
        assert_eq!(seq_diff(u32::MAX, 2), -3);
    }

    #[test]
    fn a_chain_from_a_base_is_ordered_where_pairwise_steps_wrap() {
        // 0 <= 0x7000_0000 <= 0xE000_0000 <= 2 pairwise, each step under 2^31: the chain
        // goes round the space, and from 0 it is not ordered.
        let (base, rel, rcv, top) = (0u32, 0x7000_0000, 0xE000_0000, 2);
        assert!(seq_lte(base, rel) && seq_lte(rel, rcv) && seq_lte(rcv, top));
        assert!(seq_lte_from(base, rel, rcv) && !seq_lte_from(base, rcv, top));
        // Across the wrap, an ordered chain stays ordered.
        let base = u32::MAX - 1;
        assert!(seq_lte_from(base, base, u32::MAX) && seq_lte_from(base, u32::MAX, 1));
        assert!(!seq_lte_from(base, 1, u32::MAX));
    }

    #[test]
    fn ring_add_is_the_remainder() {
        for n in 1..=9 {
            for head in 0..n {
                for k in 0..=n {
                    assert_eq!(ring_add(head, k, n), (head + k) % n, "{head} + {k} of {n}");
                }
            }
        }
    }
}
