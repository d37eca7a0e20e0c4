//! Images to object sequences: decoding with limits ([`decode`]) and the built-in
//! multi-scale region extractor ([`objects`]).

pub mod decode;
pub mod objects;

pub use decode::{decode_rgb, DecodeOptions, DecodedImage, RgbBuffer};
pub use objects::{ObjectExtractor, PIXEL_MEAN, PIXEL_STD};

use crate::config::ImageConfig;
use crate::record::ObjectSequence;
use crate::reject::Rejection;

/// Decodes image bytes under the limits of `config` and extracts the object sequence,
/// decoding JPEGs at reduced scale when `config.jpeg_reduced_decode` is set.
pub fn image_to_objects(bytes: &[u8], config: &ImageConfig, extractor: &ObjectExtractor) -> Result<ObjectSequence, Rejection> {
    let opts = DecodeOptions {
        max_pixels: config.max_pixels,
        max_dimension: config.max_dimension,
        min_size: config.jpeg_reduced_decode.then(|| extractor.min_useful_size()),
    };
    let decoded = decode_rgb(bytes, &opts)?;
    Ok(extractor.extract(&decoded.rgb))
}
