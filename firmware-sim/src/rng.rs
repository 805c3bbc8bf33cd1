//! A small, seeded pseudo-random generator: reproducible runs without a dependency.

/// xorshift64* (Vigna): 8 bytes of state, good enough statistics for simulation, and the
/// same sequence for the same seed on every target.
///
/// ```
/// use tether_firmware_sim::rng::XorShift;
///
/// let (mut a, mut b) = (XorShift::new(7), XorShift::new(7));
/// assert_eq!(a.next_u64(), b.next_u64());
/// assert!(a.below(10) < 10);
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct XorShift(u64);

impl XorShift {
    /// A generator seeded with `seed`; every seed, 0 included, gives a usable sequence.
    pub const fn new(seed: u64) -> Self {
        // Spread nearby seeds apart; the state must never be 0.
        XorShift(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// The next 32 random bits (the high half, the better one).
    pub fn next_u32(&mut self) -> u32 {
        (self.next_u64() >> 32) as u32
    }

    /// A number in `0..n` (0 when `n` is 0).
    pub fn below(&mut self, n: u64) -> u64 {
        if n == 0 {
            0
        } else {
            self.next_u64() % n
        }
    }

    /// `true` with probability `chance`. See [`Chance`].
    pub fn hit(&mut self, chance: Chance) -> bool {
        // Draw only when the outcome is in doubt, so that a zero probability consumes
        // nothing and a configuration without faults stays transparent and cheap.
        match chance.0 {
            0 => false,
            Chance::ALWAYS => true,
            t => u64::from(self.next_u32()) < t,
        }
    }
}

/// A probability, kept as a threshold on 32 random bits so that drawing needs no floating
/// point.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Chance(u64);

impl Chance {
    const ALWAYS: u64 = 1 << 32;

    /// Never.
    pub const NEVER: Chance = Chance(0);

    /// Probability `p`, clamped to `0.0..=1.0` (NaN is never).
    pub fn new(p: f32) -> Self {
        if p.is_nan() || p <= 0.0 {
            Chance(0)
        } else if p >= 1.0 {
            Chance(Self::ALWAYS)
        } else {
            // `as` saturates; p < 1 keeps the product below 2^32.
            Chance((f64::from(p) * Self::ALWAYS as f64) as u64)
        }
    }

    /// Whether this can ever happen.
    pub const fn is_never(self) -> bool {
        self.0 == 0
    }
}
