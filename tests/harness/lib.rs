//! The shared end-to-end test harness: a real Kafka-protocol broker (tansu) per test
//! ([`broker::Broker`]), Kafka helpers ([`kafka`]), and the synthetic stream generator
//! ([`synth`], behind the `unimod-synth` binary).

pub mod broker;
pub mod kafka;
pub mod synth;

pub use broker::Broker;
