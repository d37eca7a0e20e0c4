//! SplitMix64, the workspace's one small deterministic generator: stable across crate
//! versions (unlike `rand`'s generators), for the places where a seed must give the same
//! output for good (hard-negative rewrites, the synthetic test streams, benchmark inputs).
//! Its own crate so that every crate of the workspace reaches the same one (`unimod-ingest`
//! re-exports it as `rng::SplitMix64`).

/// SplitMix64 (Steele, Lea and Flood, 2014).
#[derive(Debug, Clone)]
pub struct SplitMix64(u64);

impl SplitMix64 {
    /// A generator whose state starts at `seed`.
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }

    /// The next 64 bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A number below `n` (0 when `n` is 0).
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n.max(1) as u64) as usize
    }

    /// A float in `[0, 1)` from the top 24 bits of the next output.
    pub fn unit(&mut self) -> f32 {
        (self.next_u64() >> 40) as f32 / (1u64 << 24) as f32
    }

    /// The first output of a generator seeded with `z`: SplitMix64's finaliser, which spreads
    /// nearby seeds over the whole space.
    pub fn mix(z: u64) -> u64 {
        Self(z).next_u64()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_the_reference_sequence() {
        // SplitMix64 seeded with 0 (the reference implementation's first outputs).
        let mut g = SplitMix64::new(0);
        assert_eq!(g.next_u64(), 0xE220_A839_7B1D_CDAF);
        assert_eq!(g.next_u64(), 0x6E78_9E6A_A1B9_65F4);
        assert_eq!(SplitMix64::mix(0), 0xE220_A839_7B1D_CDAF);
        let u = SplitMix64::new(0).unit();
        assert_eq!(
            u,
            (0xE220_A839_7B1D_CDAF_u64 >> 40) as f32 / (1u64 << 24) as f32
        );
        assert!((0.0..1.0).contains(&u));
    }
}
