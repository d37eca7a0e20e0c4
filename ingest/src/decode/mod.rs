//! Decoding of Kafka record values into their parts (docs/interface.md section 3): the message
//! schema ([`message`]) and precomputed detector regions ([`regions`]).

pub mod message;
pub mod regions;

pub use message::{decode_base64, decode_message, normalize_text, parse_image_url, DecodeLimits, ImageSource, Message};
pub use regions::{parse_regions, RegionLimits};
