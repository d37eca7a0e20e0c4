//! SplitMix64, the workspace's one small deterministic generator (crate `unimod-rng`):
//! stable across crate versions, for the places where a seed must give the same output for
//! good (hard-negative rewrites, the synthetic test streams).

pub use unimod_rng::SplitMix64;
