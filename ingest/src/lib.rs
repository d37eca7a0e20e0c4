//! unimod ingest: from Kafka records to model-ready object and token sequences.
//!
//! Data path: the Kafka consumer (`kafka`) hands [`record::RawRecord`]s to the preprocessing
//! pipeline ([`preprocess`]), which decodes the message ([`decode`]), downloads images
//! ([`fetch`]), turns images into object sequences ([`image`]) and texts into token sequences
//! ([`text`]), and reports every record's outcome in partition order. The
//! [`offsets::OffsetTracker`] tells the owner of durable state which offsets are safe to
//! store. This crate knows nothing of the model or of burn.

pub mod config;
pub mod decode;
pub mod fetch;
pub mod image;
pub mod kafka;
pub mod offsets;
pub mod preprocess;
pub mod record;
pub mod reject;
pub mod rng;
pub mod telemetry;
pub mod text;
